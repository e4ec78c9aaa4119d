"""A plugin built against the first released header (ABI 1.0) loads into the
current daemon and steps exactly as its rule says.
Usage: abi10_daemon.py DIR_WITH_abi10_heavyball.so"""
import sys

from sdk_session import heavyball_rule, train

log = train(sys.argv[1], "abi10_heavyball", {"lr": 0.1, "momentum": 0.5},
            heavyball_rule(0.1, 0.5), "velocity")
complaints = [line for line in log.splitlines()
              if "abi10_heavyball" in line and (" warn" in line or " error" in line)]
assert not complaints, "the daemon complained about the plugin:\n" + log
print("sdk_abi10_loads: an ABI 1.0 plugin loads and steps in the current daemon")
