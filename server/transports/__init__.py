"""How clients reach the hub: the plain WebSocket (contract §4), Socket.IO (§5), and the front door
every accepted socket starts with."""
