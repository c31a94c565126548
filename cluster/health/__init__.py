"""Node health: agents that run checks on every node, and the pure policy that judges them."""
