"""The reference trainer: teacher/student detection distillation with labeled and unlabeled data.

CLI: ``kdkernels-train {make-data,teacher,baseline,distill,eval,demo,step-bench}``.
"""
