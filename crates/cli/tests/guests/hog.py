"""Allocates 1 GiB: for the memory limit test."""


def handle(events):
    block = bytearray(1 << 30)
    return {events[0].id: f"allocated {len(block)} bytes"}
