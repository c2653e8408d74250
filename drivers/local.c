/* placeholder */
typedef int er_drivers_placeholder;
