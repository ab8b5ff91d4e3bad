"""NeMo Curator: curate/nemo_curator and translate/nemo_curator, on a step-sized Ray."""
