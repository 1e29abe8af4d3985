"""cloudproxy: keep a pool of HTTP proxies on cloud VMs and recycle them safely by age."""

__version__ = "0.1.0"
