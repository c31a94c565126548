"""The example specs (YAML files beside this one), installed as `rayfleet.examples`: `rayfleet
demo` finds them through `importlib.resources` when it runs from an installed wheel."""
