"""Drivers that run whole simulations for one application (beside ``fedsim.engine``).

Layers, each importing only from those before it: topologies -> primitives -> algorithms (``fedsim.algorithms``,
``fedsim.fedpca``) -> drivers (``fedsim.engine``, ``fedsim.pipelines``) -> face (``fedsim.cli``, experiments,
``fedsim.plots``). ``fedpca_nslkdd``: federated PCA anomaly detection on NSL-KDD, the pipeline behind
``fedsim fedpca``.
"""
