"""FleetWarden: AI-powered threat detection and fleet security for IoT devices."""

__version__ = "0.1.0"
