"""The pipeline's words, defined once: candidate statuses, reason codes (rejections and the
stages errors come from), moderation verdicts, reviewer decisions and generation modes.

Every module, the results table and the report speak these words; code compares against these
constants and reads `reason_code`, never the text of a message. Plain strings, no imports: the
progress line and the command line use them without loading Arrow.
"""

# ── status vocabulary ───────────────────────────────────────────────────────
WRITTEN = "written"  # selected, signed, written, read back and verified
REJECTED = "rejected"  # filtered or not among the best k; `reason` says which
ERROR = "error"  # something failed; `reason` holds the message
STATUSES = (WRITTEN, REJECTED, ERROR)
PENDING = "pending"  # planned, no outcome yet: a count of the summary and the report, never stored

# Reasons for REJECTED: `reason_code` holds the code, `reason` the code and any detail
# ("prompt_blocked: term 'x'"). Code reads `reason_code`, never the text of `reason`.
PROMPT_BLOCKED = "prompt_blocked"
IMAGE_UNSAFE = "image_unsafe"
BELOW_CLIP_THRESHOLD = "below_clip_threshold"
NOT_SELECTED = "not_selected"
REVIEWER_REJECTED = "reviewer_rejected"  # a reviewer's `reject` (the note is its own column)
REVIEWER_REFINED = "reviewer_refined"  # a reviewer refined it and the refinement passed: it takes the place
REJECT_REASONS = (PROMPT_BLOCKED, IMAGE_UNSAFE, BELOW_CLIP_THRESHOLD, NOT_SELECTED, REVIEWER_REJECTED, REVIEWER_REFINED)
# Reasons for ERROR: the stage that failed is the code, `reason` is "<stage>: <message>".
# Generation's is the one whose row has no image yet still carries model time (`ms_generate`:
# its failed attempts, paid for).
GENERATE_ERROR = "generate"
REFINE_ERROR = "refine"  # the image a refinement starts from cannot be read
SCORE_ERROR = "score"  # CLIP score or image moderation
WRITE_ERROR = "write"  # encode, sign or write
VERIFY_ERROR = "verify"  # the written file does not verify
OVERLAY_ERROR = "overlay"  # the brand overlay cannot be drawn (a headline that does not fit the image)
UNIT_ERROR = "unit"  # a unit that failed with no stage to name (the runner names the stage whose actor failed)
ERROR_STAGES = (GENERATE_ERROR, REFINE_ERROR, SCORE_ERROR, WRITE_ERROR, VERIFY_ERROR, OVERLAY_ERROR, UNIT_ERROR)

# Moderation verdicts (`moderation`): the prompt or the image was judged safe, or blocked.
PASS, BLOCK = "pass", "block"

# A reviewer's decisions (DESIGN: review round trip).
APPROVE, REJECT, REFINE = "approve", "reject", "refine"
DECISIONS = (APPROVE, REJECT, REFINE)

# Generation modes (`mode`): text to image, from a product or reference image, or repainting
# inside a mask around the product. A channel format of an image extends it by painting
# margins (outpainting, on the inpainting pipeline); it is a child, never a manifest row's mode.
T2I, IMG2IMG, INPAINT = "t2i", "img2img", "inpaint"
OUTPAINT = "outpaint"
MODES = (T2I, IMG2IMG, INPAINT, OUTPAINT)

# Where a candidate's seed came from (`seed_source`): the row's `seed`, its style's pinned `seeds`,
# derived by hashing (plan/identity.py), a refinement's own, or a channel format's own.
ROW_SEED, STYLE_SEED, DERIVED_SEED, REFINE_SEED, FORMAT_SEED = "row", "style", "derived", "refine", "format"
SEED_SOURCES = (ROW_SEED, STYLE_SEED, DERIVED_SEED, REFINE_SEED, FORMAT_SEED)
