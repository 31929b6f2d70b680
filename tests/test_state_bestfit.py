"""BestFit against the model: exact offsets predicted, check() after every step."""

from machines import exact_machine

import mempool

TestBestFit = exact_machine(lambda cap: mempool.BestFit(cap), predicts_offsets=True).TestCase
