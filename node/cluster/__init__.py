"""What a cluster is: the ConsensusCluster spec, the member configuration rendered from it,
and layout files.
"""
