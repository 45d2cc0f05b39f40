"""``python -m mcp_devdiag``: the DevDiag MCP server on stdio."""

from mcp_devdiag.server import main

main()
