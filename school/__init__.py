"""Online pregnancy school (网上孕育学校): lessons, care plans and their delivery.

The pure core has no I/O: `school.gestation` (dating and stages),
`school.risks`, `school.careplan` (the care-plan engine) and `school.lessons`
(lesson files; reading them is its only I/O).
"""
