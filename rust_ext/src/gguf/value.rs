//! GGUF metadata values: the 13 value types, scalars and arrays.

/// A GGUF metadata value type (the `gguf_type` enum of the spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => ValueType::U8,
            1 => ValueType::I8,
            2 => ValueType::U16,
            3 => ValueType::I16,
            4 => ValueType::U32,
            5 => ValueType::I32,
            6 => ValueType::F32,
            7 => ValueType::Bool,
            8 => ValueType::String,
            9 => ValueType::Array,
            10 => ValueType::U64,
            11 => ValueType::I64,
            12 => ValueType::F64,
            _ => return None,
        })
    }

    /// The lower-case name the gguf Python package uses (`GGUFValueType.X.name.lower()`).
    pub fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "uint8",
            ValueType::I8 => "int8",
            ValueType::U16 => "uint16",
            ValueType::I16 => "int16",
            ValueType::U32 => "uint32",
            ValueType::I32 => "int32",
            ValueType::F32 => "float32",
            ValueType::Bool => "bool",
            ValueType::String => "string",
            ValueType::Array => "array",
            ValueType::U64 => "uint64",
            ValueType::I64 => "int64",
            ValueType::F64 => "float64",
        }
    }

    /// Size in bytes of one value, for the fixed-size types.
    pub fn fixed_size(self) -> Option<u64> {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => Some(1),
            ValueType::U16 | ValueType::I16 => Some(2),
            ValueType::U32 | ValueType::I32 | ValueType::F32 => Some(4),
            ValueType::U64 | ValueType::I64 | ValueType::F64 => Some(8),
            ValueType::String | ValueType::Array => None,
        }
    }

    pub fn is_integer(self) -> bool {
        matches!(
            self,
            ValueType::U8
                | ValueType::I8
                | ValueType::U16
                | ValueType::I16
                | ValueType::U32
                | ValueType::I32
                | ValueType::U64
                | ValueType::I64
        )
    }
}

/// An integer of any GGUF integer type, widened without loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int {
    Unsigned(u64),
    Signed(i64),
}

/// A scalar (non-array) metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Scalar {
    pub fn value_type(&self) -> ValueType {
        match self {
            Scalar::U8(_) => ValueType::U8,
            Scalar::I8(_) => ValueType::I8,
            Scalar::U16(_) => ValueType::U16,
            Scalar::I16(_) => ValueType::I16,
            Scalar::U32(_) => ValueType::U32,
            Scalar::I32(_) => ValueType::I32,
            Scalar::F32(_) => ValueType::F32,
            Scalar::Bool(_) => ValueType::Bool,
            Scalar::String(_) => ValueType::String,
            Scalar::U64(_) => ValueType::U64,
            Scalar::I64(_) => ValueType::I64,
            Scalar::F64(_) => ValueType::F64,
        }
    }

    /// The value if it is of an integer type (not bool, not float).
    pub fn as_int(&self) -> Option<Int> {
        Some(match *self {
            Scalar::U8(v) => Int::Unsigned(v.into()),
            Scalar::U16(v) => Int::Unsigned(v.into()),
            Scalar::U32(v) => Int::Unsigned(v.into()),
            Scalar::U64(v) => Int::Unsigned(v),
            Scalar::I8(v) => Int::Signed(v.into()),
            Scalar::I16(v) => Int::Signed(v.into()),
            Scalar::I32(v) => Int::Signed(v.into()),
            Scalar::I64(v) => Int::Signed(v),
            _ => return None,
        })
    }
}

/// An array value: its element type and length, and the elements when read.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub elem: ValueType,
    pub len: u64,
    pub values: Option<ArrayValues>,
}

/// The elements of an array, one vector per element type.
#[derive(Debug, Clone, PartialEq)]
pub enum ArrayValues {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
    Array(Vec<Array>),
}

impl ArrayValues {
    /// The elements as integers, if the element type is an integer type.
    pub fn to_ints(&self) -> Option<Vec<Int>> {
        fn u<T: Copy + Into<u64>>(v: &[T]) -> Vec<Int> {
            v.iter().map(|&x| Int::Unsigned(x.into())).collect()
        }
        fn s<T: Copy + Into<i64>>(v: &[T]) -> Vec<Int> {
            v.iter().map(|&x| Int::Signed(x.into())).collect()
        }
        Some(match self {
            ArrayValues::U8(v) => u(v),
            ArrayValues::U16(v) => u(v),
            ArrayValues::U32(v) => u(v),
            ArrayValues::U64(v) => u(v),
            ArrayValues::I8(v) => s(v),
            ArrayValues::I16(v) => s(v),
            ArrayValues::I32(v) => s(v),
            ArrayValues::I64(v) => s(v),
            _ => return None,
        })
    }

    /// The elements as flags (non-zero is true), for bool and integer arrays.
    pub fn to_flags(&self) -> Option<Vec<bool>> {
        if let ArrayValues::Bool(v) = self {
            return Some(v.clone());
        }
        let ints = self.to_ints()?;
        Some(
            ints.iter()
                .map(|i| !matches!(i, Int::Unsigned(0) | Int::Signed(0)))
                .collect(),
        )
    }
}

/// A metadata value: a scalar or an array.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(Scalar),
    Array(Array),
}

impl Value {
    /// The type name for messages: `uint32`, or `array of float32`.
    pub fn type_name(&self) -> String {
        match self {
            Value::Scalar(s) => s.value_type().name().to_owned(),
            Value::Array(a) => format!("array of {}", a.elem.name()),
        }
    }
}
