"""The experiment harness around `tff_flame`: config and flags, attacks, defenses by
name, the round loop, TFF worker lifecycle and the training binary."""
