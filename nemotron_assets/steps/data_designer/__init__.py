"""NeMo Data Designer: sdg/data_designer and byob/mcq."""
