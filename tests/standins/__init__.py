"""Local stand-ins for the cloud APIs, served over real sockets on 127.0.0.1."""
