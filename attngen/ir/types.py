"""IR value types: integers, floats, booleans and row vectors.

A row vector has a symbolic length: ``"D"`` for q/k rows, ``"DV"`` for the output
row, or the last dim of an input tensor (a size name or an integer, as text).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ty:
    kind: str  # 'int' | 'float' | 'bool' | 'vec'
    length: str | None = None  # vec only

    def __str__(self) -> str:
        return f"vec[{self.length}]" if self.kind == "vec" else self.kind

    @property
    def is_numeric(self) -> bool:
        return self.kind in ("int", "float")

    @property
    def is_vec(self) -> bool:
        return self.kind == "vec"


INT = Ty("int")
FLOAT = Ty("float")
BOOL = Ty("bool")


def vec(length: str | int) -> Ty:
    return Ty("vec", str(length))


#: element kind of each input dtype
DTYPES = {"f32": "float", "f16": "float", "bf16": "float", "i32": "int", "i64": "int", "bool": "bool"}
FLOAT_DTYPES = ("f32", "f16", "bf16")
