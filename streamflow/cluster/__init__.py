"""Sources spread over Ray actors, one pipeline per GPU, moved off actors that die.

Ray is optional (`pip install 'streamflow[ray]'`) and imported only when a cluster run starts; the
core pipeline never imports it. `ClusterConfig` is the config's `cluster:` section;
`streamflow.cluster.driver.ClusterRunner` runs a config on a cluster.
"""

from streamflow.cluster.config import ClusterConfig

__all__ = ["ClusterConfig"]
