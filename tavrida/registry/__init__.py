"""Central discovery: service records kept on the deployment's own broker.

:class:`tavrida.discovery.CentralDiscovery` is the public face. Inside:

* :mod:`tavrida.registry.record` -- the JSON record one process announces;
* :mod:`tavrida.registry.store` -- the seam to the broker that keeps records
  (one implementation per broker, beside the transports);
* :mod:`tavrida.registry.directory` -- the per-process cache the store keeps
  current by push, and the registrar that announces and heartbeats;
* :mod:`tavrida.registry.command` -- ``tavrida discovery set|list|remove``.
"""
