"""The hubbub terminal client: JSON mode, failover across nodes, a prompt_toolkit UI."""
