"""BestFit against the model: exact offsets predicted, check() after every step."""

import mempool
from machines import exact_machine

TestBestFit = exact_machine(lambda cap: mempool.BestFit(cap), predicts_offsets=True).TestCase
