"""Tuned subjects: the store (``store``), their words in prompts (``words``), the learned subject
embedding (``embedding``) and using a subject at sampling time (``use``).

Importing this package does not import torch: ``store`` and ``words`` are re-exported here;
``embedding`` and ``use`` are imported where a model is at hand.
"""

from .store import (FORMAT, SUBJECT_FILE, SubjectExistsError, SubjectInfo, SubjectNotFoundError, SubjectStore,
                    lowrank_file, read_subject_header, subject_info)
from .words import class_prompt_of, token_in_prompt, word_char_span

__all__ = ["FORMAT", "SUBJECT_FILE", "SubjectExistsError", "SubjectInfo", "SubjectNotFoundError", "SubjectStore",
           "class_prompt_of", "lowrank_file", "read_subject_header", "subject_info", "token_in_prompt",
           "word_char_span"]
