"""Built-in reward terms (rule-based defaults that need no model); importing this module registers them."""

from medr3.rewards import answer, clinical, evidence, format_terms, judge, search_quality  # noqa: F401
