"""Cryptography for wg-py: primitives, keys, the Noise IKpsk2 handshake, cookies, transport.

Nothing in this package opens a socket, touches asyncio or reads a clock: time and randomness
come in as arguments where they matter.
"""
