"""Transports: the sockets under the mesh (today ZeroMQ's ROUTER/DEALER and PUB/SUB)."""
