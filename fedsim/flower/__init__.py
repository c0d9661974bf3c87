"""fedsim on Flower: the apps (``apps``: ``clientapp`` / ``serverapp``), their run config (``spec``), an
in-process runner without Ray (``inprocess``) and Flower's simulation engine (``simulation``). See docs/flower.md."""
