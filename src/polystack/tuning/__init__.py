"""Tuning: measure verified variants under MLPerf LoadGen scenarios and choose a plan per profile.

``tune(store, record, profile)`` measures and stores a plan; ``spec_for_profile(store, record,
profile)`` gives servers and batch jobs the plan's LoadSpec and settings on this machine.
"""

from polystack.tuning.plan import PlanSettings, fingerprint, plan_status, spec_for_profile
from polystack.tuning.profiles import PROFILES
from polystack.tuning.tuner import TuneOptions, TuneResult, tune

__all__ = [
    "PROFILES",
    "PlanSettings",
    "TuneOptions",
    "TuneResult",
    "fingerprint",
    "plan_status",
    "spec_for_profile",
    "tune",
]
