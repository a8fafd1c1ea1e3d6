"""Progressive delivery: the ladder a challenger climbs on live evidence, and the gates at each step."""
