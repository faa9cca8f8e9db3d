"""Wire formats as msgspec Structs: data only, no logic, no engine imports."""
