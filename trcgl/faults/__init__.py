"""Fault injection for the reliability suite: a switchable loopback TCP proxy and scenarios that measure real parts."""
