"""Models: the architecture registry, named parameter groups and pretrained weights.

``registry`` builds any recipe's ``nn.Module`` (the baseline CNN, torchvision models by name) and
names its parameter groups (``head``, ``backbone``, ``layer4`` ...); ``weights`` fetches
pretrained weights once per machine and reads state dicts.

May import: itself only (``brainmri.config`` imports the registry to validate names).
"""
