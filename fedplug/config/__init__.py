"""Typed configuration: schema, YAML loading, CLI overrides."""
from fedplug.config.load import dotted, dump_config, load_config
from fedplug.config.schema import ConfigNode, Key, Section, register_key, register_section

__all__ = ["ConfigNode", "Key", "Section", "dotted", "dump_config", "load_config", "register_key", "register_section"]
