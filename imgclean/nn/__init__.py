"""The networks and their training (torch lives here and in what imports it)."""
