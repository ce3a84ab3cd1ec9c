import HostOS
