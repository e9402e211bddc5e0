# An Application with fwproxy as one of its services: twistd -ny docs/examples/fwproxy.tac
# (FWPROXY_CONFIG names the configuration file; without it, the embedded default is used.)
import os

from twisted.application import service

from fwproxy import load_config, makeService

application = service.Application("egress")
config = load_config(os.environ.get("FWPROXY_CONFIG"))
makeService(config).setServiceParent(application)
