/* empty: keeps er_test_support buildable before the harness exists. */
typedef int er_empty_translation_unit;
