"""medexp: config-driven deep-learning experiments on medical images."""
