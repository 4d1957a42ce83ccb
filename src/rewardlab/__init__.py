"""rewardlab: learn rewards from feedback, optimize against them, and measure the proxy-gold gap."""
__version__ = "0.1.0"
