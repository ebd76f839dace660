"""Network families with RobustBench's exact state_dict layouts.

Adding one: a file that registers a Family, plus one import line here.
"""

from robustbench_karp.zoo.architectures import cifar_resnets, dm_resnets, torchvision_nets, wide_resnet  # noqa: F401  (registration)
