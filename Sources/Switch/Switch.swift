// The switch: implemented in this module.
