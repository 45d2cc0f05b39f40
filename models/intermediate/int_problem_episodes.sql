{#-
    Problem episodes per tenant x problem (DESIGN.md): an episode starts at the first sighting
    while none is open and ends at the first `fixed` or `manual` resolution recorded after that
    start; `failed` ends nothing; a later sighting starts a new episode.

    Sightings (ts) and ending resolutions (resolved_at) of one tenant x problem are merged into
    one time line. Each event is numbered with the count of resolutions before it (a running
    count whose frame starts at unbounded preceding: linear in PostgreSQL). The sightings with
    number n and resolution n + 1, the first one after them, then share the number n: grouping
    by it yields each episode with its start, sightings and end in one pass, without a join.
    A group holding only a resolution (a second outcome of an episode already ended) is no
    episode. At equal timestamps a sighting sorts before a resolution (an outcome recorded at
    the very instant of a sighting ends its episode), and `fixed` before `manual`.

    Incremental: for each tenant x problem with rows changed since the previous build
    (macros/incremental.sql), `changed_from` is its earliest event that may have changed. Episodes
    that ended before it are kept; the one open at that instant is replayed from one event at its
    start that carries its earlier sightings (only sightings can precede changed_from inside it),
    followed by every event from changed_from on. A full build is the same with changed_from at
    -infinity for every tenant x problem: no episode kept, every event replayed.

    Speed: the time line is sorted by an integer id per tenant x problem (sorting by the two text
    keys is several times slower); the pre-hooks, local to the model's transaction, keep that sort
    in memory and stop the planner from sorting a million rows by text for a merge join that it
    misjudges as cheaper than a hash join.
-#}
{{
    config(
        materialized='incremental',
        post_hook=["{{ distribute_by_tenant() }}"],
        incremental_strategy='delete+insert',
        unique_key=['tenant_id', 'problem_code'],
        pre_hook=[
            "set local work_mem = '256MB'",
            "set local enable_mergejoin = off",
        ],
        indexes=[
            {'columns': ['first_seen_day']},
            {'columns': ['tenant_id', 'problem_code', 'episode_number'], 'unique': true},
        ],
    )
}}

with findings as not materialized (

    select
        ts,
        tenant_id,
        problem_code,
        resolution,
        resolved_at
    from {{ ref('stg_devdiag__diag_run') }}
    where problem_code is not null

),

{% if is_incremental() %}
    changes as (

        select
            tenant_id,
            problem_code,
            -- least() skips nulls: a finding's sighting, and its resolution when that ends episodes
            min(least(ts, case when resolution in ('fixed', 'manual') then resolved_at end)) as changed_from
        from {{ ref('stg_devdiag__diag_run') }}
        where
            problem_code is not null
            and {{ changed_since_last_build() }}
        group by 1, 2

    ),

    known_episodes as (

        select
            known.tenant_id,
            known.problem_code,
            known.episode_number,
            known.started_at,
            known.first_seen_day,
            known.sightings,
            known.resolved_at,
            known.resolved_by,
            known.ttr_days,
            changes.changed_from
        from {{ this }} as known
        inner join changes
            on
                known.tenant_id = changes.tenant_id
                and known.problem_code = changes.problem_code

    ),

    kept_episodes as (

        select
            tenant_id,
            problem_code,
            episode_number,
            started_at,
            first_seen_day,
            sightings,
            resolved_at,
            resolved_by,
            ttr_days
        from known_episodes
        where resolved_at < changed_from

    ),

    replays as (

        select
            changes.tenant_id,
            changes.problem_code,
            changes.changed_from,
            min(known_episodes.started_at) filter (
                where
                known_episodes.started_at < changes.changed_from
                and (known_episodes.resolved_at is null or known_episodes.resolved_at >= changes.changed_from)
            ) as open_since,
            count(known_episodes.episode_number) filter (
                where known_episodes.resolved_at < changes.changed_from
            ) as kept_count
        from changes
        left join known_episodes
            on
                changes.tenant_id = known_episodes.tenant_id
                and changes.problem_code = known_episodes.problem_code
        group by 1, 2, 3

    ),
{% else %}
    kept_episodes as (

        select
            null::text as tenant_id,
            null::text as problem_code,
            null::bigint as episode_number,
            null::timestamptz as started_at,
            null::date as first_seen_day,
            null::bigint as sightings,
            null::timestamptz as resolved_at,
            null::text as resolved_by,
            null::interval as ttr_days
        where false

    ),

    replays as (

        select
            tenant_id,
            problem_code,
            '-infinity'::timestamptz as changed_from,
            null::timestamptz as open_since,
            0 as kept_count
        from findings
        group by 1, 2

    ),
{% endif %}

tenant_problems as (

    select
        tenant_id,
        problem_code,
        changed_from,
        open_since,
        kept_count,
        row_number() over () as tenant_problem_id
    from replays

),

sightings as (

    select
        tenant_problems.tenant_problem_id,
        findings.ts as event_at,
        0 as event_order,
        null::text as resolution,
        1 as sightings
    from findings
    inner join tenant_problems
        on
            findings.tenant_id = tenant_problems.tenant_id
            and findings.problem_code = tenant_problems.problem_code
    where
        findings.ts >= tenant_problems.changed_from
        {% if is_incremental() %}
        -- lets the planner range-scan the ts indexes
            and findings.ts >= (select min(changes.changed_from) from changes)
        {% endif %}

),

{% if is_incremental() %}
    earlier_sightings as (

    -- the open episode's sightings before changed_from, as one event at its start
        select
            tenant_problems.tenant_problem_id,
            tenant_problems.open_since as event_at,
            0 as event_order,
            null::text as resolution,
            count(*) as sightings
        from findings
        inner join tenant_problems
            on
                findings.tenant_id = tenant_problems.tenant_id
                and findings.problem_code = tenant_problems.problem_code
        where
            findings.ts >= tenant_problems.open_since
            and findings.ts < tenant_problems.changed_from
        group by 1, 2

    ),
{% endif %}

resolutions as (

    select
        tenant_problems.tenant_problem_id,
        findings.resolved_at as event_at,
        case findings.resolution when 'fixed' then 1 else 2 end as event_order,
        findings.resolution,
        0 as sightings
    from findings
    inner join tenant_problems
        on
            findings.tenant_id = tenant_problems.tenant_id
            and findings.problem_code = tenant_problems.problem_code
    where
        findings.resolution in ('fixed', 'manual')
        and findings.resolved_at >= tenant_problems.changed_from
        {% if is_incremental() %}
        -- lets the planner range-scan the index of outcomes by resolved_at
            and findings.resolved_at >= (select min(changes.changed_from) from changes)
        {% endif %}

),

events as (

    select
        tenant_problem_id,
        event_at,
        event_order,
        resolution,
        sightings
    from sightings
    {% if is_incremental() %}
        union all
        select
            tenant_problem_id,
            event_at,
            event_order,
            resolution,
            sightings
        from earlier_sightings
    {% endif %}
    union all
    select
        tenant_problem_id,
        event_at,
        event_order,
        resolution,
        sightings
    from resolutions

),

numbered_events as (

    select
        tenant_problem_id,
        event_at,
        event_order,
        resolution,
        sightings,
        count(resolution) over (
            partition by tenant_problem_id
            order by event_at, event_order
            rows between unbounded preceding and current row
        ) - (resolution is not null)::integer as resolutions_before
    from events

),

episode_groups as (

    select
        tenant_problem_id,
        resolutions_before,
        min(event_at) filter (where event_order = 0) as started_at,
        sum(sightings) filter (where event_order = 0) as sightings,
        min(event_at) filter (where event_order > 0) as resolved_at,
        min(resolution) as resolved_by
    from numbered_events
    group by 1, 2
    having count(*) filter (where event_order = 0) > 0

),

replayed_episodes as (

    select
        tenant_problems.tenant_id,
        tenant_problems.problem_code,
        tenant_problems.kept_count + row_number() over (
            partition by episode_groups.tenant_problem_id
            order by episode_groups.resolutions_before
        ) as episode_number,
        episode_groups.started_at,
        (episode_groups.started_at at time zone 'utc')::date as first_seen_day,
        episode_groups.sightings::bigint as sightings,
        episode_groups.resolved_at,
        episode_groups.resolved_by,
        episode_groups.resolved_at - episode_groups.started_at as ttr_days
    from episode_groups
    inner join tenant_problems
        on episode_groups.tenant_problem_id = tenant_problems.tenant_problem_id

),

episodes as (

    select
        tenant_id,
        problem_code,
        episode_number,
        started_at,
        first_seen_day,
        sightings,
        resolved_at,
        resolved_by,
        ttr_days,
        now() as built_at
    from kept_episodes
    union all
    select
        tenant_id,
        problem_code,
        episode_number,
        started_at,
        first_seen_day,
        sightings,
        resolved_at,
        resolved_by,
        ttr_days,
        now() as built_at
    from replayed_episodes

)

select * from episodes
