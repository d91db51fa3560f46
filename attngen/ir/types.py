"""IR value types: integers, floats, booleans and row vectors.

A row vector has a symbolic length: ``"D"`` for q/k rows, ``"DV"`` for the output
row, or the last dim of an input tensor (a size name or an integer, as text). Its
elements are floats, or booleans for a comparison of rows (``q > 0.0``, language 1.1),
which only ``and``, ``or``, ``not`` and ``where``'s condition take.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ty:
    kind: str  # 'int' | 'float' | 'bool' | 'vec'
    length: str | None = None  # vec only
    elem: str = "float"  # vec only: 'float' or 'bool'

    def __str__(self) -> str:
        if self.kind == "vec":
            return f"{'b' if self.elem == 'bool' else ''}vec[{self.length}]"
        return self.kind

    @property
    def is_bool(self) -> bool:
        """A boolean, or a row of them."""
        return self.kind == "bool" or (self.kind == "vec" and self.elem == "bool")

    @property
    def is_numeric(self) -> bool:
        return self.kind in ("int", "float")

    @property
    def is_vec(self) -> bool:
        return self.kind == "vec"


INT = Ty("int")
FLOAT = Ty("float")
BOOL = Ty("bool")


def vec(length: str | int, elem: str = "float") -> Ty:
    return Ty("vec", str(length), elem)


#: element kind of each input dtype
DTYPES = {"f32": "float", "f16": "float", "bf16": "float", "i32": "int", "i64": "int", "bool": "bool"}
FLOAT_DTYPES = ("f32", "f16", "bf16")
