"""Dagster resources: the artifact store and the hardware profile."""

from resources.artifact_store import ArtifactStore
from resources.profile import HardwareProfile, Profile, load_profile

__all__ = ["ArtifactStore", "HardwareProfile", "Profile", "load_profile"]
