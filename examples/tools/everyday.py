"""Tools for examples/tool_calling.yaml: arithmetic, unit conversion and a small lookup table.

stillroom reads each function's schema from its type hints and docstring (nothing here is
imported by stillroom itself) and runs every call in its sandbox, standard library only.
"""

from typing import Literal

# Factors to one base unit per kind: metres, kilograms, litres.
_FACTORS = {
    "mm": 0.001, "cm": 0.01, "m": 1.0, "km": 1000.0, "in": 0.0254, "ft": 0.3048,
    "mi": 1609.344, "g": 0.001, "kg": 1.0, "lb": 0.45359237, "oz": 0.028349523125,
    "ml": 0.001, "l": 1.0, "gal": 3.785411784, "cup": 0.2365882365,
}
_KINDS = {
    "length": {"mm", "cm", "m", "km", "in", "ft", "mi"},
    "mass": {"g", "kg", "lb", "oz"},
    "volume": {"ml", "l", "gal", "cup"},
}
Unit = Literal["mm", "cm", "m", "km", "in", "ft", "mi", "g", "kg", "lb", "oz", "ml", "l",
               "gal", "cup", "C", "F", "K"]

COUNTRIES = {
    "france": {"capital": "Paris", "currency": "euro", "population_millions": 68.4},
    "japan": {"capital": "Tokyo", "currency": "yen", "population_millions": 124.5},
    "kenya": {"capital": "Nairobi", "currency": "Kenyan shilling", "population_millions": 55.1},
    "peru": {"capital": "Lima", "currency": "sol", "population_millions": 34.4},
    "canada": {"capital": "Ottawa", "currency": "Canadian dollar", "population_millions": 40.1},
    "india": {"capital": "New Delhi", "currency": "Indian rupee", "population_millions": 1428.6},
}


def calculate(a: float, b: float, operation: Literal["add", "subtract", "multiply", "divide",
                                                     "power"]) -> float:
    """Do one arithmetic operation on two numbers.

    Args:
        a: The first number.
        b: The second number.
        operation: What to do with them: a + b, a - b, a * b, a / b or a ** b.
    """
    if operation == "add":
        return a + b
    if operation == "subtract":
        return a - b
    if operation == "multiply":
        return a * b
    if operation == "divide":
        return a / b  # b == 0 raises: the call fails, and the execution check says so
    return a**b


def convert_units(value: float, from_unit: Unit, to_unit: Unit) -> float:
    """Convert a length, mass, volume or temperature from one unit to another.

    Args:
        value: The amount to convert.
        from_unit: Its unit (mm, cm, m, km, in, ft, mi, g, kg, lb, oz, ml, l, gal, cup, C, F, K).
        to_unit: The unit wanted, of the same kind.
    """
    temperatures = {"C", "F", "K"}
    if from_unit in temperatures or to_unit in temperatures:
        if not (from_unit in temperatures and to_unit in temperatures):
            raise ValueError(f"cannot convert {from_unit} to {to_unit}")
        celsius = {"C": value, "F": (value - 32) * 5 / 9, "K": value - 273.15}[from_unit]
        result = {"C": celsius, "F": celsius * 9 / 5 + 32, "K": celsius + 273.15}[to_unit]
        return round(result, 4)
    kinds = [kind for kind, units in _KINDS.items() if from_unit in units and to_unit in units]
    if not kinds:
        raise ValueError(f"cannot convert {from_unit} to {to_unit}: different kinds of unit")
    return round(value * _FACTORS[from_unit] / _FACTORS[to_unit], 6)


def country_facts(country: str, fact: Literal["capital", "currency", "population_millions"]) -> str:
    """Look up a fact about a country (France, Japan, Kenya, Peru, Canada or India).

    Args:
        country: The country's English name.
        fact: Which fact: its capital, its currency or its population in millions.
    """
    facts = COUNTRIES.get(country.strip().lower())
    if facts is None:
        known = ", ".join(name.title() for name in COUNTRIES)
        raise KeyError(f"no facts about {country!r}; known countries: {known}")
    return str(facts[fact])
