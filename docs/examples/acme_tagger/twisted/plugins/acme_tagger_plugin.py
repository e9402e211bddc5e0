# The dropin that makes "acme.tagger" available to fwproxy by name (found by twisted.plugin).
from acmetagger import TaggerFactory

tagger = TaggerFactory
