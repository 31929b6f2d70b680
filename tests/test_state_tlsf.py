"""TLSF against the model: check() after every step, no false OutOfSpace."""

from machines import exact_machine

import mempool

TestTLSF = exact_machine(lambda cap: mempool.TLSF(cap)).TestCase
TestTLSFFewNodes = exact_machine(
    lambda cap: mempool.TLSF(cap, max_blocks=min(cap, 4096)), capacity_max=4096
).TestCase
