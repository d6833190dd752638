"""wg-py-cni: a CNI plugin (spec 1.0.0, plus STATUS and GC of 1.1.0) for nodes on the wg-py mesh.

The mesh agent (``wg-py mesh join``) leases one subnet per node and keeps a state file,
``/run/wg-py/mesh/IFACE.json``. The plugin reads the node's subnet and inner MTU from it and
delegates to the reference ``bridge`` plugin with ``host-local`` IPAM, as flannel's plugin does.

Layout: :mod:`tunnel.cni.spec` (CNI errors, versions, the environment and config, sans-I/O),
:mod:`tunnel.cni.mesh` (the state file's contents, sans-I/O), :mod:`tunnel.cni.delegate` (the
delegate's config, result merging, CHECK's comparison, GC's selection; sans-I/O) and
:mod:`tunnel.cni.plugin` (the thin shell: files, exec of the delegate, netns inspection, main).
This package needs only the state file: it imports no engine, and no engine imports it.
"""
