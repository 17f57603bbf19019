"""Pure ranking / exposure metrics and the evaluation loop."""
