"""IJB-B / IJB-C evaluation (insightface protocol). Importing this package has no side effects.

CLI: ``python -m eval.ijb.ijb_eval --help``.
"""

from eval.ijb.data import (
    IJBAlignedFaces,
    IJBFormatError,
    load_meta,
    load_meta_1n,
    read_face_tid_mid,
    read_name_5pts_score,
    read_template_media_list,
    read_template_pair_list,
    read_template_subject_id_list,
)
from eval.ijb.metrics import (
    evaluate_1v1,
    identification_closed,
    identification_open,
    image2template_feature,
    image_input_features,
    tpr_at_fpr,
    verification,
)

__all__ = [
    "IJBAlignedFaces",
    "IJBFormatError",
    "evaluate_1v1",
    "identification_closed",
    "identification_open",
    "image2template_feature",
    "image_input_features",
    "load_meta",
    "load_meta_1n",
    "read_face_tid_mid",
    "read_name_5pts_score",
    "read_template_media_list",
    "read_template_pair_list",
    "read_template_subject_id_list",
    "tpr_at_fpr",
    "verification",
]
