"""What many tests share: loopback ports and servers (:mod:`tests.support.net`) and bounded
polling (:mod:`tests.support.poll`)."""
