"""The database layer that the MCP server and the `devdiag` CLI share: which database (config),
how to connect and explain a failure (db), and the embedded PostgreSQL (embedded).

It imports neither ``mcp_devdiag`` nor ``orchestrator``: both depend on it, never the reverse.
"""
